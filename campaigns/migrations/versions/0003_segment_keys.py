"""segment keys: who is eligible for what, on the contact and on each of its tags

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27

- ``contacts.eligible``: a generated column, one bit per purpose granted (1 promotional,
  2 research, 4 third party), 0 when the address is suppressed. One index on
  (eligible, country) replaces the three (purpose, country, suppressed) ones, and the
  index on ``city`` goes: segment filters compare cities case-insensitively, which no
  plain index on the column can serve, so it was written on every import and never read.
- ``contact_tags.eligible`` and ``contact_tags.country``: copies of the contact's,
  kept by triggers on both tables, so that a segment with a tag is counted from one
  index range (tag, eligible, country) without visiting a single contact. That index
  is unique on the case-folded tag per contact (tags compare case-insensitively in
  segments, so "VIP" and "vip" on one contact were one tag counted twice); existing
  duplicates are merged, keeping the spelling that sorts first.
- The index on ``consent_events.campaign_id`` only holds events that have a campaign
  (withdrawals through a message): imports write none of those.
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

# Frozen here on purpose: campaigns/models.py states the same expression for the models.
ELIGIBLE = (
    "CASE WHEN suppressed IS NULL THEN"
    " (CASE WHEN promotional = 'granted' THEN 1 ELSE 0 END)"
    " + (CASE WHEN research = 'granted' THEN 2 ELSE 0 END)"
    " + (CASE WHEN third_party = 'granted' THEN 4 ELSE 0 END)"
    " ELSE 0 END"
)

_OLD_CONTACT_INDEXES = {
    "ix_contacts_promotional_country": "(promotional, country, suppressed)",
    "ix_contacts_research_country": "(research, country, suppressed)",
    "ix_contacts_third_party_country": "(third_party, country, suppressed)",
    "ix_contacts_city": "(city)",
}

_SQLITE_TRIGGERS = [
    # A contact's consent, suppression or country changed: its tags follow.
    """
    CREATE TRIGGER contacts_segment_keys
    AFTER UPDATE OF promotional, research, third_party, suppressed, country ON contacts
    WHEN OLD.eligible IS NOT NEW.eligible OR OLD.country IS NOT NEW.country
    BEGIN
        UPDATE contact_tags SET eligible = NEW.eligible, country = NEW.country
        WHERE contact_id = NEW.id;
    END
    """,
    # A tag written without the keys (SQLite cannot change NEW before the insert):
    # fill them from the contact. Keys a writer gives are trusted: only the importer
    # gives them, for contacts it has just written (checking each against the contact
    # would cost a look-up per tag). SQLite has one writer at a time: no race here.
    """
    CREATE TRIGGER contact_tags_segment_keys
    AFTER INSERT ON contact_tags
    WHEN NEW.eligible IS NULL OR NEW.country IS NULL
    BEGIN
        UPDATE contact_tags
        SET (eligible, country) = (SELECT eligible, country FROM contacts WHERE id = NEW.contact_id)
        WHERE contact_id = NEW.contact_id AND tag = NEW.tag;
    END
    """,
]

_PG_TRIGGERS = [
    """
    CREATE FUNCTION contacts_segment_keys() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF NEW.eligible IS DISTINCT FROM OLD.eligible
           OR NEW.country IS DISTINCT FROM OLD.country THEN
            UPDATE contact_tags SET eligible = NEW.eligible, country = NEW.country
            WHERE contact_id = NEW.id;
        END IF;
        RETURN NULL;
    END $$
    """,
    """
    CREATE TRIGGER contacts_segment_keys AFTER UPDATE ON contacts
    FOR EACH ROW EXECUTE FUNCTION contacts_segment_keys()
    """,
    # PostgreSQL can set the keys before the row is written, whatever the writer gave.
    # FOR SHARE: a consent change to the contact in a concurrent transaction either
    # commits first (and is read here) or waits for this one (and its trigger then
    # sees this tag); without it the tag could keep the keys from before the change.
    """
    CREATE FUNCTION contact_tags_segment_keys() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        SELECT eligible, country INTO NEW.eligible, NEW.country
        FROM contacts WHERE id = NEW.contact_id FOR SHARE;
        RETURN NEW;
    END $$
    """,
    """
    CREATE TRIGGER contact_tags_segment_keys BEFORE INSERT OR UPDATE OF contact_id ON contact_tags
    FOR EACH ROW EXECUTE FUNCTION contact_tags_segment_keys()
    """,
]


def _tag_key(postgres: bool, column: str = "tag") -> str:
    # What segments compare: A-Z folded, nothing else (campaigns/segments.py).
    return f'lower({column} COLLATE "C")' if postgres else f"{column} COLLATE NOCASE"


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    execute = op.execute
    for name in _OLD_CONTACT_INDEXES:
        execute(f"DROP INDEX {name}")
    stored = "STORED" if postgres else "VIRTUAL"
    execute(
        "ALTER TABLE contacts ADD COLUMN eligible INTEGER"
        f" GENERATED ALWAYS AS ({ELIGIBLE}) {stored}"
    )
    execute("CREATE INDEX ix_contacts_eligible_country ON contacts (eligible, country)")

    execute("ALTER TABLE contact_tags ADD COLUMN eligible INTEGER")
    execute("ALTER TABLE contact_tags ADD COLUMN country VARCHAR(100)")
    order = ' COLLATE "C"' if postgres else ""
    execute(
        "DELETE FROM contact_tags WHERE EXISTS (SELECT 1 FROM contact_tags AS other"
        " WHERE other.contact_id = contact_tags.contact_id"
        f" AND {_tag_key(postgres, 'other.tag')} = {_tag_key(postgres, 'contact_tags.tag')}"
        f" AND other.tag{order} < contact_tags.tag{order})"
    )
    execute(
        "UPDATE contact_tags SET (eligible, country) ="
        " (SELECT eligible, country FROM contacts WHERE contacts.id = contact_tags.contact_id)"
    )
    execute("DROP INDEX ix_contact_tags_tag")
    execute(
        "CREATE UNIQUE INDEX ix_contact_tags_segment"
        f" ON contact_tags ({_tag_key(postgres)}, eligible, country, contact_id)"
    )
    for statement in _PG_TRIGGERS if postgres else _SQLITE_TRIGGERS:
        execute(statement)

    execute("DROP INDEX ix_consent_events_campaign_id")
    execute(
        "CREATE INDEX ix_consent_events_campaign_id ON consent_events (campaign_id)"
        " WHERE campaign_id IS NOT NULL"
    )


def downgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    execute = op.execute
    execute("DROP INDEX ix_consent_events_campaign_id")
    execute("CREATE INDEX ix_consent_events_campaign_id ON consent_events (campaign_id)")
    execute("DROP TRIGGER contact_tags_segment_keys" + (" ON contact_tags" if postgres else ""))
    execute("DROP TRIGGER contacts_segment_keys" + (" ON contacts" if postgres else ""))
    if postgres:
        execute("DROP FUNCTION contact_tags_segment_keys()")
        execute("DROP FUNCTION contacts_segment_keys()")
    execute("DROP INDEX ix_contact_tags_segment")
    execute("CREATE INDEX ix_contact_tags_tag ON contact_tags (tag, contact_id)")
    execute("ALTER TABLE contact_tags DROP COLUMN country")
    execute("ALTER TABLE contact_tags DROP COLUMN eligible")
    execute("DROP INDEX ix_contacts_eligible_country")
    execute("ALTER TABLE contacts DROP COLUMN eligible")
    for name, columns in _OLD_CONTACT_INDEXES.items():
        execute(f"CREATE INDEX {name} ON contacts {columns}")
