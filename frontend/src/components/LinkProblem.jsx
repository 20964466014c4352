/**
 * Why the page shows the popular movies instead of what its address asked for (`?user=abc`).
 *
 * @param {{problems: string[]}} props
 */
export function LinkProblem({ problems }) {
  if (problems.length === 0) return null;
  return (
    <div className="notice link-problem" role="status" data-testid="link-problem">
      <strong>This link could not be read, so you see the popular movies.</strong>
      {problems.map((problem) => (
        <span key={problem} className="notice-reason">
          {problem}
        </span>
      ))}
    </div>
  );
}
