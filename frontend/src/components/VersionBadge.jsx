/** Which registered model version served the response on screen. */
export function VersionBadge({ modelName, version }) {
  const label = version ? `v${version}` : 'version unknown';
  return (
    <span className="badge" data-testid="model-version" title={`Served by ${modelName} ${label}`}>
      <span className="visually-hidden">Served by </span>
      {modelName} <strong>{label}</strong>
    </span>
  );
}
