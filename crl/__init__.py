"""CRL: placeholder package; built in a later issue on the ca core."""
