"""runs: the hardware a run trained on and its fast-path choices; metrics: MFU and GPU memory per point

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-08 03:50:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("hardware", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("fast_paths", sa.JSON(), nullable=True))
    with op.batch_alter_table("metrics", schema=None) as batch_op:
        batch_op.add_column(sa.Column("mfu", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("gpu_memory_bytes", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("gpu_peak_bytes", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("metrics", schema=None) as batch_op:
        batch_op.drop_column("gpu_peak_bytes")
        batch_op.drop_column("gpu_memory_bytes")
        batch_op.drop_column("mfu")
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_column("fast_paths")
        batch_op.drop_column("hardware")
