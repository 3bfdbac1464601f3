"""Channel adapters: consume engage.delivery, make the interaction, report outcomes."""
