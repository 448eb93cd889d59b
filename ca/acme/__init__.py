"""ACME (RFC 8555) in the core: JWS, ACME errors, account rules, orders and http-01.

Nothing here knows Flask; ``web.acme`` is the HTTP edge. Covered: JWS, nonces, the directory,
accounts, orders, authorizations, http-01 validation and finalize; revokeCert and ARI come later.
"""
