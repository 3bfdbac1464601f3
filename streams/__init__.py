"""engage: a Kafka-native engine for proactive, real-time customer engagement."""
