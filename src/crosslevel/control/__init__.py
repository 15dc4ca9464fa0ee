"""The context-aware controller: switch among prepared variants when the context moves."""
