"""Domain and storage: contacts, the consent ledger, segments, campaigns.

Knows nothing of SMTP, HTTP or screens (a test keeps it so). Importing this
package is cheap on purpose: cron jobs start here.
"""
