"""Rendering, messages, tokens and sending (DESIGN.md §5). Imports `campaigns`, never `tui`.

Kept empty on purpose: `campaigns serve` needs only the tokens, and importing this package
must not pull in Jinja2, premailer or lxml.
"""
