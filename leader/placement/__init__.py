"""The scheduler's machinery, kept apart from its interface (`leader.scheduler`).

- `requirements`: what a service asks for (reservation, constraints, spread, strategy);
- `cluster`: the mutable view of nodes during one pass (capacity, usage, load indexes);
- `fit`: a segment tree that finds the first node in binpack order with room;
- `pick`: the spread, binpack and global placement rules;
- `reasons`: why a replica could not be placed, in words a person can act on.

Pure: no grpc, docker or etcd, no clock, no randomness.
"""
