"""The report side: a run read back (tidy frames) -> sections -> figures and tables -> the report page."""
