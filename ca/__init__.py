"""hsmca core: the certificate authority itself (no HTTP, no Flask)."""
