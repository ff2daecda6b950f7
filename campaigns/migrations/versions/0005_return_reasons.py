"""why something came back: the reason, its group and the receiving domain

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03

Issue 14: every return event stores its reason (campaigns.bounce_reasons.Reason) and
the reason's group, so that reports count bounces by group and a later reading under
new rules (`campaigns inbox reclassify`) knows what each was. A block (the receiving side
refused us, not the person) also stores the receiving domain, the only thing blocks are
counted by; it is blanked when the person is erased. Rows from before have "".

`suppressions.replaced_reason` keeps the weaker reason a stronger one replaced (an
unsubscribe, when a hard bounce came after it), so that lifting the bounce restores it.

`suppression_changes` is the ledger of suppressions lifted (by `inbox reclassify`, when
a past bounce read under the new rules says nothing about the address): what was lifted,
why, and from which campaign and delivery it had come.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("suppressions", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("replaced_reason", sa.String(length=20), nullable=False, server_default="")
        )
    op.create_table(
        "suppression_changes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("address_hash", sa.String(length=64), nullable=False),
        sa.Column("change", sa.String(length=20), nullable=False),
        sa.Column("old_reason", sa.String(length=20), nullable=False),
        sa.Column("why", sa.String(length=300), nullable=False),
        sa.Column("source", sa.String(length=300), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("campaign_id", sa.Integer(), nullable=True),
        sa.Column("delivery_id", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_suppression_changes_address_hash", "suppression_changes", ["address_hash"])
    with op.batch_alter_table("return_events", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("reason", sa.String(length=30), nullable=False, server_default="")
        )
        batch_op.add_column(
            sa.Column("reason_group", sa.String(length=20), nullable=False, server_default="")
        )
        batch_op.add_column(
            sa.Column("domain", sa.String(length=255), nullable=False, server_default="")
        )
        batch_op.add_column(
            sa.Column("diagnostic", sa.String(length=300), nullable=False, server_default="")
        )
        batch_op.add_column(
            sa.Column("detector", sa.String(length=30), nullable=False, server_default="")
        )


def downgrade() -> None:
    with op.batch_alter_table("suppressions", schema=None) as batch_op:
        batch_op.drop_column("replaced_reason")
    op.drop_index("ix_suppression_changes_address_hash", table_name="suppression_changes")
    op.drop_table("suppression_changes")
    with op.batch_alter_table("return_events", schema=None) as batch_op:
        batch_op.drop_column("detector")
        batch_op.drop_column("diagnostic")
        batch_op.drop_column("domain")
        batch_op.drop_column("reason_group")
        batch_op.drop_column("reason")
