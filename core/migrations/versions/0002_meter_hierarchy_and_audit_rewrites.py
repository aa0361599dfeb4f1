"""meter hierarchy and the audit trail of rewrites

Created 2026-12-05 06:24:19.157491 (`smartpark db revision`); revision ids below, in order of the file names.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'


def upgrade() -> None:
    op.create_table('audit_rewrites',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('received_ms', sa.BigInteger(), nullable=False),
    sa.Column('site', sa.String(length=63), nullable=False),
    sa.Column('device', sa.String(length=63), nullable=False),
    sa.Column('measurement', sa.String(length=63), nullable=False),
    sa.Column('metric', sa.String(length=63), nullable=False),
    sa.Column('ts_ms', sa.BigInteger(), nullable=False),
    sa.Column('old_value', sa.Float(), nullable=False),
    sa.Column('new_value', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('audit_rewrites', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_audit_rewrites_device'), ['device'], unique=False)
        batch_op.create_index(batch_op.f('ix_audit_rewrites_received_ms'), ['received_ms'], unique=False)
        batch_op.create_index('ix_audit_rewrites_site_received', ['site', 'received_ms'], unique=False)

    with op.batch_alter_table('devices', schema=None) as batch_op:
        batch_op.add_column(sa.Column('role', sa.String(length=12), nullable=True))
        batch_op.add_column(sa.Column('parent_id', sa.String(length=63), nullable=True))
        batch_op.add_column(sa.Column('rated_kw', sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('devices', schema=None) as batch_op:
        batch_op.drop_column('rated_kw')
        batch_op.drop_column('parent_id')
        batch_op.drop_column('role')

    with op.batch_alter_table('audit_rewrites', schema=None) as batch_op:
        batch_op.drop_index('ix_audit_rewrites_site_received')
        batch_op.drop_index(batch_op.f('ix_audit_rewrites_received_ms'))
        batch_op.drop_index(batch_op.f('ix_audit_rewrites_device'))

    op.drop_table('audit_rewrites')
