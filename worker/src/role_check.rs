//! The start-up check of the worker's own database role. Every user's SQL runs as that one role, so
//! the isolation between users is a property of the role: a role that could escape the database
//! (superuser, the server-file and server-program roles, REPLICATION, BYPASSRLS), read other backends'
//! SQL (pg_read_all_stats, the activity functions, pg_stat_statements), or signal them
//! (pg_signal_backend, the signalling functions) is refused, unless the operator insists
//! (`--insecure-privileged-role`). `deploy/postgres/reader-role.sql` makes a role that passes.

use sqlx::PgPool;

/// Roles whose members can escape the database or break the isolation between users.
const PRIVILEGED_ROLES: &[(&str, &str)] = &[
    (
        "pg_execute_server_program",
        "runs programs on the database host (COPY … TO PROGRAM)",
    ),
    ("pg_read_server_files", "reads files on the database host"),
    ("pg_write_server_files", "writes files on the database host"),
    (
        "pg_signal_backend",
        "can cancel or terminate other users' queries",
    ),
    (
        "pg_read_all_stats",
        "sees every backend's SQL (pg_monitor includes it)",
    ),
];

/// Functions `reader-role.sql` takes from PUBLIC: each one lets a query read or stop the others.
const ISOLATING_FUNCTIONS: &[&str] = &[
    "pg_stat_get_activity",
    "pg_stat_get_backend_activity",
    "pg_cancel_backend",
    "pg_terminate_backend",
    "set_config",
];

/// The role the worker connects as, and what is wrong with it (empty: nothing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleAudit {
    pub role: String,
    pub problems: Vec<String>,
}

impl RoleAudit {
    /// The start-up refusal: names the role, what is wrong, and the way out.
    pub fn refusal(&self) -> String {
        format!(
            "refusing to run user SQL as database role `{}`: it {}. Every user's query runs as this \
             role, so it must not escape the database or see or stop other users' queries: run the \
             worker as the least-privilege role that deploy/postgres/reader-role.sql creates (load \
             that script into the database), or pass --insecure-privileged-role \
             (C2S_INSECURE_PRIVILEGED_ROLE=true) to start anyway",
            self.role,
            self.problems.join("; it ")
        )
    }
}

/// One query: the role's attributes, its memberships and what it may execute or read.
const AUDIT_SQL: &str = r#"
SELECT current_user::text,
       r.rolsuper, r.rolreplication, r.rolbypassrls,
       ARRAY(SELECT g FROM unnest($1::text[]) AS u(g)
             WHERE to_regrole(g) IS NOT NULL AND pg_has_role(current_user, g::name, 'MEMBER')),
       ARRAY(SELECT p.oid::regprocedure::text FROM pg_proc p
             WHERE p.pronamespace = 'pg_catalog'::regnamespace AND p.proname = ANY($2::text[])
               AND has_function_privilege(current_user, p.oid, 'EXECUTE')
             ORDER BY 1),
       -- By OID: a name in a schema the role may not use would fail the whole check.
       ARRAY(SELECT c.oid::regclass::text FROM pg_extension e
             JOIN pg_class c ON c.relnamespace = e.extnamespace AND c.relname = 'pg_stat_statements'
             WHERE e.extname = 'pg_stat_statements'
               AND has_table_privilege(current_user, c.oid, 'SELECT'))
FROM pg_roles r WHERE r.rolname = current_user
"#;

/// Checks the role the pool connects as.
pub async fn audit(pool: &PgPool) -> Result<RoleAudit, sqlx::Error> {
    let roles: Vec<&str> = PRIVILEGED_ROLES.iter().map(|(r, _)| *r).collect();
    #[allow(clippy::type_complexity)]
    let (role, superuser, replication, bypass_rls, members, functions, statements): (
        String,
        bool,
        bool,
        bool,
        Vec<String>,
        Vec<String>,
        Vec<String>,
    ) = sqlx::query_as(AUDIT_SQL)
        .bind(&roles)
        .bind(ISOLATING_FUNCTIONS)
        .fetch_one(pool)
        .await?;
    let mut problems = Vec::new();
    if superuser {
        // A superuser has every other privilege too: saying so is enough.
        problems.push("is a superuser (COPY … TO PROGRAM is a shell on the database host)".into());
        return Ok(RoleAudit { role, problems });
    }
    if replication {
        problems.push("has REPLICATION (a logical slot reads every table's changes)".into());
    }
    if bypass_rls {
        problems.push("has BYPASSRLS (it skips row-level security)".into());
    }
    for member in members {
        let why = PRIVILEGED_ROLES
            .iter()
            .find(|(r, _)| *r == member)
            .map_or("", |(_, why)| why);
        problems.push(format!("is a member of {member}, which {why}"));
    }
    if !functions.is_empty() {
        problems.push(format!(
            "may execute {} (not taken from PUBLIC in this database)",
            functions.join(", ")
        ));
    }
    for view in statements {
        problems.push(format!("may read {view}, which holds every query's text"));
    }
    Ok(RoleAudit { role, problems })
}
