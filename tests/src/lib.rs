//! End-to-end tests of whatsnap: real processes, real NATS, real PostgreSQL. The binaries in
//! `src/bin/` are the processes the tests start and kill.

pub mod twilio_rig;
