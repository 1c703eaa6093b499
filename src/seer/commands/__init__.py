"""One module per subcommand, listed in :data:`seer.cli.SUBCOMMANDS`. Each defines

- ``NAME`` (the subcommand, e.g. ``"detox-eval"``) and ``HELP`` (one line for ``seer --help``);
- ``Config``: its config dataclass, whose fields become its options
  (:mod:`seer.commands.options`; a nested config dataclass, such as
  :class:`~seer.inference.monitor_options.MonitorOptions`, becomes an argument group), validated in
  ``__post_init__`` with :class:`~seer.errors.SeerError`;
- ``main(config, *, progress=True) -> int``: calls the library, which returns data, and
  prints it (only commands print).
"""
