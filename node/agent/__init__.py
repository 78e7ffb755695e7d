"""The agent: runs this node's assigned tasks as containers, checks their health
(http/https, tcp, exec), restarts them under their policy, and reports them."""
