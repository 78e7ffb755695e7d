"""The vocabulary every part shares: records, keys, the typed spec, errors, settings.

Pure: imports no grpc, docker or etcd client, so the leader and the tests read it freely."""
