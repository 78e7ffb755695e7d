"""The agent: runs this node's assigned tasks as containers and reports them."""
