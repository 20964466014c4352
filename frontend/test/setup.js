import { cleanup } from '@testing-library/react';
import { afterEach } from 'vitest';

// Vitest runs without globals, so Testing Library cannot register its own cleanup.
afterEach(() => cleanup());
// One jsdom window serves a whole test file: every test starts at `/` again.
afterEach(() => window.history.replaceState(null, '', '/'));
