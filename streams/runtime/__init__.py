"""Stages that run on confluent-kafka directly: a consumer group each, state per partition in RocksDB, changelogs as Faust's."""
