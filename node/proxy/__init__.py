"""The routing mesh: a pure balancer (balancer.py) and the engines that use it (tcp.py)."""
