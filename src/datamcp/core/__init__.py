"""Pure async core: no grpc, protobuf, boto or Lambda imports here."""
