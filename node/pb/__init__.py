"""Generated gRPC stubs for the shoal.v1 wire contract (see `proto/`).

Do not edit the `*_pb2*` files: run `python -m node.pb.generate`.
"""
