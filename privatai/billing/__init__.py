"""Billing: Stripe subscriptions move an account's status, webhooks are applied
exactly once, and usage of plans priced per token is reported as meter events.

``billing.mode: none`` (the default) leaves plans and statuses to the operator
(CLI and admin page); ``stripe`` turns this package on (docs/BILLING.md).
"""
