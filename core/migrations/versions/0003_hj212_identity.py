"""hj212 identity of devices

Created 2026-12-05 06:39:45.426135 (`smartpark db revision`); revision ids below, in order of the file names.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'


def upgrade() -> None:
    with op.batch_alter_table('devices', schema=None) as batch_op:
        batch_op.add_column(sa.Column('hj212_mn', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('hj212_pw_hash', sa.String(length=200), nullable=True))
        batch_op.create_unique_constraint(batch_op.f('uq_devices_hj212_mn'), ['hj212_mn'])


def downgrade() -> None:
    with op.batch_alter_table('devices', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('uq_devices_hj212_mn'), type_='unique')
        batch_op.drop_column('hj212_pw_hash')
        batch_op.drop_column('hj212_mn')
