"""screening process and product of devices

Created 2026-12-05 06:57:38.864359 (`smartpark db revision`); revision ids below, in order of the file names.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'


def upgrade() -> None:
    with op.batch_alter_table('devices', schema=None) as batch_op:
        batch_op.add_column(sa.Column('process', sa.String(length=40), nullable=True))
        batch_op.add_column(sa.Column('product', sa.String(length=40), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('devices', schema=None) as batch_op:
        batch_op.drop_column('product')
        batch_op.drop_column('process')
