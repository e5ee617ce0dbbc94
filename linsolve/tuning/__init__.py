"""Online tuning of a solver parameter across a sequence of systems (Learning to Relax),
and classical estimates such as the SOR-optimal omega.
"""
