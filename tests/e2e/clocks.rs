//! Wrong clocks at the edge (issue 12, case 6): rows stamped in the future
//! or the past must not block cleanup, the storage budget or the hourly
//! sync. The real extension, the real agent, a real PostgreSQL.

use sluice_tests::*;
