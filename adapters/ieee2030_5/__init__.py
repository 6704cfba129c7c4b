"""IEEE 2030.5 / CSIP-AUS aggregator client: safe XML intake, device identity, DER event engine.

- ``xml``: bodies in (size cap, no DTDs, Content-Type, ``<Error>`` roots, CSIP-AUS namespace
  variants) and envoy-schema models out; models back to bytes for POST/PUT.
- ``identity``: LFDI and SFDI of a certificate.
- ``controls``: the §10.2.3 event rules for one site (pure: server time is a parameter),
  the Responses owed, and the translation into ``GridConstraint`` objects.
"""
