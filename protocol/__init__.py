"""The wire protocol shared by silo nodes, the aggregator and admin tools: the gRPC service, its
generated stubs, streaming helpers, channel setup and the job spec schema."""
