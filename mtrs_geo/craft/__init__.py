"""CRAFT: build referring (MTRS) benchmarks from change data, audit them by hand, export the result.

Library entry points (the ``mtrs craft`` commands are thin shells over them):

- :func:`mtrs_geo.craft.builder.build` with :class:`~mtrs_geo.craft.builder.BuildOptions` and
  :class:`~mtrs_geo.craft.sources.SourceOptions`: change data in, MTRefSeg-21K layout out.
- :func:`mtrs_geo.craft.audit_app.create_app` / :func:`~mtrs_geo.craft.audit_app.make_audit_server`:
  the audit page; decisions in :class:`~mtrs_geo.craft.audit_store.DecisionStore`.
- :func:`mtrs_geo.craft.export.export`: accepted triplets with edits applied, plus the audit log.
"""
