"""Data: joins each signal with what is known of the customer."""
