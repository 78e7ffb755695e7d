"""What runs only while this node holds leadership: election, scheduler, reconciler."""
