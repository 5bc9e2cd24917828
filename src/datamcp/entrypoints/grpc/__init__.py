"""The gRPC entry point: servicers translate proto <-> domain and delegate to core."""
