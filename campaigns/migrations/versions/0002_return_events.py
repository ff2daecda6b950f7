"""what came back: return events, and the delivery behind a suppression

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "return_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("message_hash", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("address_hash", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("campaign_id", sa.Integer(), nullable=True),
        sa.Column("delivery_id", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("message_hash"),
    )
    with op.batch_alter_table("return_events", schema=None) as batch_op:
        batch_op.create_index(
            "ix_return_events_address", ["address_hash", "kind", "occurred_at"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_return_events_campaign_id"), ["campaign_id"], unique=False
        )
    with op.batch_alter_table("suppressions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("delivery_id", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("suppressions", schema=None) as batch_op:
        batch_op.drop_column("delivery_id")
    with op.batch_alter_table("return_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_return_events_campaign_id"))
        batch_op.drop_index("ix_return_events_address")
    op.drop_table("return_events")
