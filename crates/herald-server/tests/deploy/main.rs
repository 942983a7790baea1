//! Deployment tests: the files in deploy/ and docker-compose.yml, checked statically and run for
//! real with Debian's nginx, prometheus and redis-server in front of several `herald` processes
//! (no Docker engine runs here). One test binary so the suite links once.

mod support;

mod dashboard;
mod drain;
mod nginx;
mod prometheus;
mod rolling;
mod static_checks;
