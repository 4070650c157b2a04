"""Plans on the API: which models a key may use, its account's status and
monthly quota, per-key rates, and the backends reserved for some accounts."""
