"""One module per subcommand: its config dataclass and a thin main()."""
