"""Attribution: what happened after each decision, treated or held out."""
