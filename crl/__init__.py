"""CRLs (RFC 5280): building, signing in the HSM, numbering and publication. No Flask here.

* ``crl.build`` — one CRL from its entries (cryptography's builder; AKI, CRL number, reason
  codes, an issuingDistributionPoint for a partition), signature checked.
* ``crl.der`` — the fast path for large CRLs: the entries written as DER and spliced into a CRL
  the builder made without entries (identical bytes; ``bench/crl.py``).
* ``crl.publisher`` — what is due (:func:`~crl.publisher.due`), publishing a CA's CRLs
  (:func:`~crl.publisher.publish`), and the scheduler's :func:`~crl.publisher.run_once`.

``web/crl.py`` serves them at ``/crl/CA.crl`` and ``/crl/CA/SHARD.crl``.
"""
