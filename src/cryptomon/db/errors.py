"""PostgreSQL's errors split into the two families every writer tells apart: the data of a row (SQLSTATE
class 22 data exception, 23 integrity violation, 54 program limit such as an index entry too long) is bad
data, set aside row by row; anything else on the connection (class 08, 57, 53 …) is an outage, waited out."""

from __future__ import annotations

from psycopg import errors

# psycopg files class 54 under OperationalError, like a lost connection: it must be matched first
DATA_ERRORS = (errors.DataError, errors.IntegrityError, errors.ProgramLimitExceeded)
