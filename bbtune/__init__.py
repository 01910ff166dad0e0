"""bbtune: black-box prompt tuning for language models you can only query."""
