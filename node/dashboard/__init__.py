"""The web dashboard every daemon can serve (issue 14, item 6): HTTPS with the node's
certificate, login with a client token, read-only JSON views and a page that polls them."""
