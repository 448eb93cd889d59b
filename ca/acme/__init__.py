"""ACME (RFC 8555) in the core: JWS parsing and verification, ACME errors and account rules.

Nothing here knows Flask; ``web.acme`` is the HTTP edge. This first slice covers JWS, nonces,
the directory and accounts; orders, authorizations, challenges and finalize come later.
"""
