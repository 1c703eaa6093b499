"""`seer detox-eval`: refusal and harm of base and SEER (with monitors) on harmful and
safe-looking prompts, scored by a harm judge."""
