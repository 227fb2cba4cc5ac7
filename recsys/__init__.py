"""Shared pieces of the recommendation system that both services and the trainer use.

Only the contract lives here: the generated protos (`recsys.v1`), the bundle format
(`recsys.bundle`), the feature encoding the two towers were trained on (`recsys.features`),
input validation (`recsys.validation`) and configuration (`recsys.config`). The `recsys`
command line is `recsys.cli`, which imports services and trainer lazily per subcommand.
"""
