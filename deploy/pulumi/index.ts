// Deploys Aetherium to the Kubernetes cluster of the current kubeconfig (or the provider configured for the stack)
// from the Helm chart in this repository, deploy/helm/aetherium. The secrets come from Pulumi config secrets, are
// written into one Kubernetes Secret, and reach the pods by secretKeyRef: they are never in the chart's values.
//
//   pulumi config set --secret databaseUrl 'postgres://aetherium:PASSWORD@db:5432/aetherium?sslmode=require'
//   pulumi config set --secret redisUrl 'redis://:PASSWORD@redis:6379/0'
//   pulumi config set --secret clusterToken "$(openssl rand -hex 32)"
//   pulumi config set --secret secretsKey "$(openssl rand -base64 32)"
//   pulumi up
//
// docs/deploy.md lists every config key.
import * as path from "path";

import * as k8s from "@pulumi/kubernetes";
import * as pulumi from "@pulumi/pulumi";

const cfg = new pulumi.Config();

/** Optional secrets: set only when configured, so a feature without its secret stays off. */
const optionalSecrets: Record<string, string> = {
  githubWebhookSecret: "github-webhook-secret",
  slackSigningSecret: "slack-signing-secret",
  slackBotToken: "slack-bot-token",
  lokiPassword: "loki-password",
  lokiBearerToken: "loki-bearer-token",
  metricsToken: "metrics-token",
  secretsOldKeys: "secrets-old-keys",
};

/** Checks that a config value is a URL with one of the schemes, failing the preview with a clear message. */
function requireURL(value: string, key: string, schemes: string[]): string {
  let scheme: string;
  try {
    scheme = new URL(value).protocol.replace(/:$/, "");
  } catch {
    throw new pulumi.RunError(`config ${key}: not a URL`);
  }
  if (!schemes.includes(scheme)) {
    throw new pulumi.RunError(`config ${key}: must start with ${schemes.map((s) => s + "://").join(" or ")}`);
  }
  return value;
}

const namespaceName = cfg.get("namespace") ?? "aetherium";
const createNamespace = cfg.getBoolean("createNamespace") ?? true;
const releaseName = cfg.get("releaseName") ?? "aetherium";

const databaseUrl = cfg
  .requireSecret("databaseUrl")
  .apply((v) => requireURL(v, "databaseUrl", ["postgres", "postgresql"]));
const redisUrl = cfg.requireSecret("redisUrl").apply((v) => requireURL(v, "redisUrl", ["redis", "rediss"]));
const clusterToken = cfg.requireSecret("clusterToken").apply((v) => {
  if (v.length < 16) {
    throw new pulumi.RunError("config clusterToken: at least 16 characters (openssl rand -hex 32)");
  }
  return v;
});
const secretsKey = cfg.requireSecret("secretsKey").apply((v) => {
  if (Buffer.from(v, "base64").length !== 32) {
    throw new pulumi.RunError("config secretsKey: base64 of 32 bytes (openssl rand -base64 32)");
  }
  return v;
});

const ns = createNamespace
  ? new k8s.core.v1.Namespace("aetherium", { metadata: { name: namespaceName } })
  : undefined;
const namespace = ns ? ns.metadata.name : pulumi.output(namespaceName);

const secretData: Record<string, pulumi.Input<string>> = {
  "database-url": databaseUrl,
  "redis-url": redisUrl,
  "cluster-token": clusterToken,
  "secrets-key": secretsKey,
};
for (const [configKey, secretKey] of Object.entries(optionalSecrets)) {
  const v = cfg.getSecret(configKey);
  if (v !== undefined) {
    secretData[secretKey] = v;
  }
}

const secret = new k8s.core.v1.Secret("aetherium", {
  metadata: { name: `${releaseName}-secrets`, namespace },
  type: "Opaque",
  stringData: secretData,
});

/** Extra chart values (the chart's values.schema.json checks them), e.g. {"gateway": {"replicas": 3}}. */
const extraValues = cfg.getObject<Record<string, unknown>>("values") ?? {};

const chartValues: Record<string, unknown> = {
  ...extraValues,
  // Chart v4 renders like `helm template` and leaves out Helm hooks, so the chart's pre-install/pre-upgrade
  // migrations Job would never run: the gateways migrate at start instead (auto_migrate; a PostgreSQL advisory lock
  // serialises gateways starting together).
  migrations: { job: { enabled: false } },
  secrets: {
    ...((extraValues.secrets as Record<string, unknown> | undefined) ?? {}),
    existingSecret: secret.metadata.name,
  },
  metrics: {
    ...((extraValues.metrics as Record<string, unknown> | undefined) ?? {}),
    token: { enabled: cfg.getSecret("metricsToken") !== undefined, key: "metrics-token" },
  },
};
const image = cfg.get("image");
if (image !== undefined) {
  chartValues.image = { ...((extraValues.image as Record<string, unknown> | undefined) ?? {}), repository: image };
}
const imageTag = cfg.get("imageTag");
if (imageTag !== undefined) {
  chartValues.image = { ...((chartValues.image as Record<string, unknown> | undefined) ?? {}), tag: imageTag };
}

const chart = new k8s.helm.v4.Chart(
  "aetherium",
  {
    name: releaseName,
    chart: path.join(__dirname, "..", "helm", "aetherium"),
    namespace,
    values: chartValues,
  },
  { dependsOn: [secret] },
);

export const namespaceOut = namespace;
export const secretName = secret.metadata.name;
/** The chart's full name (templates/_helpers.tpl): the release name, suffixed with the chart's unless it has it. */
const fullname = releaseName.includes("aetherium") ? releaseName : `${releaseName}-aetherium`;
export const gatewayService = `${fullname}-gateway`;
export const resourceCount = chart.resources.apply((r) => r.length);
