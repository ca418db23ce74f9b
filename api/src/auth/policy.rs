//! Who may call what: one rule per gRPC method, in one table. A method
//! missing from the table is refused, so a new method cannot be reachable
//! by accident. Which rows a caller sees (its own tenant's only) is decided
//! by the handlers, which know the data.

use super::Role;

/// Who may call a method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No token needed (server reflection, health).
    Anonymous,
    /// A valid token with one of these roles.
    Roles(&'static [Role]),
}

const ALL: &[Role] = &[Role::Tenant, Role::Operator, Role::Regulator];
const TENANT: &[Role] = &[Role::Tenant];
const OPERATOR: &[Role] = &[Role::Operator];
const TENANT_OR_OPERATOR: &[Role] = &[Role::Tenant, Role::Operator];
const STAFF: &[Role] = &[Role::Operator, Role::Regulator];

/// Every method the server serves, with its rule.
pub const RULES: &[(&str, Access)] = &[
    ("/finpool.v1.JobService/SubmitJob", Access::Roles(TENANT)),
    ("/finpool.v1.JobService/GetJob", Access::Roles(ALL)),
    ("/finpool.v1.JobService/ListJobs", Access::Roles(ALL)),
    (
        "/finpool.v1.JobService/CancelJob",
        Access::Roles(TENANT_OR_OPERATOR),
    ),
    ("/finpool.v1.JobService/WatchJobs", Access::Roles(ALL)),
    ("/finpool.v1.JobService/StreamLogs", Access::Roles(ALL)),
    (
        "/finpool.v1.TenantService/CreateTenant",
        Access::Roles(OPERATOR),
    ),
    ("/finpool.v1.TenantService/GetTenant", Access::Roles(ALL)),
    ("/finpool.v1.TenantService/ListTenants", Access::Roles(ALL)),
    (
        "/finpool.v1.TenantService/SetQuota",
        Access::Roles(OPERATOR),
    ),
    (
        "/finpool.v1.TenantService/SuspendTenant",
        Access::Roles(OPERATOR),
    ),
    (
        "/finpool.v1.TenantService/ResumeTenant",
        Access::Roles(OPERATOR),
    ),
    (
        "/finpool.v1.TokenService/RevokeTokens",
        Access::Roles(OPERATOR),
    ),
    (
        "/finpool.v1.ModelService/RegisterModel",
        Access::Roles(OPERATOR),
    ),
    ("/finpool.v1.ModelService/ListModels", Access::Roles(ALL)),
    ("/finpool.v1.NodeService/ListNodes", Access::Roles(ALL)),
    ("/finpool.v1.UsageService/GetUsage", Access::Roles(ALL)),
    // Billing: everyone reads (tenants their own); operators set prices,
    // meter and close periods.
    ("/finpool.v1.BillingService/ListPrices", Access::Roles(ALL)),
    (
        "/finpool.v1.BillingService/SetPrice",
        Access::Roles(OPERATOR),
    ),
    (
        "/finpool.v1.BillingService/GetPeriodUsage",
        Access::Roles(ALL),
    ),
    (
        "/finpool.v1.BillingService/ListInvoices",
        Access::Roles(ALL),
    ),
    ("/finpool.v1.BillingService/GetInvoice", Access::Roles(ALL)),
    ("/finpool.v1.BillingService/ListPeriods", Access::Roles(ALL)),
    (
        "/finpool.v1.BillingService/ClosePeriod",
        Access::Roles(OPERATOR),
    ),
    (
        "/finpool.v1.BillingService/MeterUsage",
        Access::Roles(OPERATOR),
    ),
    // The regulator's report spans every tenant: staff only.
    (
        "/finpool.v1.ReportService/GetUsageReport",
        Access::Roles(STAFF),
    ),
    (
        "/finpool.v1.AuditService/ListAuditEntries",
        Access::Roles(STAFF),
    ),
    (
        "/finpool.v1.AuditService/GetCheckpoint",
        Access::Roles(STAFF),
    ),
    // Probes and tools ask these before they hold a token.
    ("/grpc.health.v1.Health/Check", Access::Anonymous),
    ("/grpc.health.v1.Health/Watch", Access::Anonymous),
    (
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        Access::Anonymous,
    ),
    (
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        Access::Anonymous,
    ),
];

/// The methods that change something: each call to one is written to the
/// audit log with its outcome (other calls only when refused). A
/// finpool.v1 method missing here must read only, as its name says (Get,
/// List, Watch, Stream); a test holds the two together.
pub const MUTATING: &[&str] = &[
    "/finpool.v1.JobService/SubmitJob",
    "/finpool.v1.JobService/CancelJob",
    "/finpool.v1.TenantService/CreateTenant",
    "/finpool.v1.TenantService/SetQuota",
    "/finpool.v1.TenantService/SuspendTenant",
    "/finpool.v1.TenantService/ResumeTenant",
    "/finpool.v1.TokenService/RevokeTokens",
    "/finpool.v1.ModelService/RegisterModel",
    "/finpool.v1.BillingService/SetPrice",
    "/finpool.v1.BillingService/ClosePeriod",
    "/finpool.v1.BillingService/MeterUsage",
];

/// Whether a call to `path` changes something.
pub fn mutates(path: &str) -> bool {
    MUTATING.contains(&path)
}

/// The rule for a request path, if the method is known.
pub fn rule(path: &str) -> Option<Access> {
    RULES.iter().find(|(p, _)| *p == path).map(|(_, a)| *a)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every method served (finpool.v1, health, reflection) has a rule, and
    /// every rule names a served method: the table and the API cannot drift.
    #[test]
    fn every_api_method_has_exactly_one_rule() {
        let mut pool = prost_reflect::DescriptorPool::new();
        for set in [
            finpool_proto::FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
        ] {
            pool.decode_file_descriptor_set(set).unwrap();
        }
        let mut methods = Vec::new();
        for service in pool.services() {
            for method in service.methods() {
                methods.push(format!("/{}/{}", service.full_name(), method.name()));
            }
        }
        assert!(methods.len() >= 18);
        for m in &methods {
            assert!(rule(m).is_some(), "{m} has no authorization rule");
        }
        for (path, _) in RULES {
            assert!(
                methods.contains(&path.to_string()),
                "rule for unknown method {path}"
            );
            assert_eq!(RULES.iter().filter(|(p, _)| p == path).count(), 1);
        }
    }

    /// Only health and reflection answer without a token.
    #[test]
    fn only_health_and_reflection_are_anonymous() {
        for (path, access) in RULES {
            let open = path.starts_with("/grpc.health.v1.Health/")
                || path.starts_with("/grpc.reflection.");
            assert_eq!(*access == Access::Anonymous, open, "{path}");
        }
    }

    /// Every finpool.v1 method either mutates (and is audited as such) or
    /// reads by its name; a new method must be put on one side.
    #[test]
    fn every_method_is_audited_as_a_read_or_a_mutation() {
        for path in MUTATING {
            assert!(rule(path).is_some(), "{path} is not a served method");
        }
        for (path, _) in RULES {
            if !path.starts_with("/finpool.v1.") || mutates(path) {
                continue;
            }
            let method = path.rsplit('/').next().unwrap();
            assert!(
                ["Get", "List", "Watch", "Stream"]
                    .iter()
                    .any(|verb| method.starts_with(verb)),
                "{path} neither reads by its name nor is in MUTATING"
            );
        }
    }

    /// The audit log is for regulators and operators, never tenants.
    #[test]
    fn tenants_cannot_read_the_audit_log() {
        for (path, access) in RULES {
            if path.starts_with("/finpool.v1.AuditService/") {
                assert_eq!(*access, Access::Roles(STAFF), "{path}");
            }
        }
    }

    #[test]
    fn regulators_can_change_nothing() {
        for (path, access) in RULES {
            let mutates = [
                "Submit", "Cancel", "Create", "Set", "Register", "Suspend", "Resume", "Revoke",
                "Close", "Meter",
            ]
            .iter()
            .any(|verb| path.rsplit('/').next().unwrap().starts_with(verb))
                || mutates(path);
            if let Access::Roles(roles) = access
                && mutates
            {
                assert!(!roles.contains(&Role::Regulator), "{path}");
            }
        }
    }
}
