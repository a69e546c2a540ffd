// typescript-eslint's recommended rules over the product (src/) and its tooling and tests; in src/ also
// no non-null assertions and no type assertions (`as`) unless a disable comment says why.
import tseslint from 'typescript-eslint';

/** Every `eslint-disable…` comment must say why after ` -- ` (the house rule for unchecked casts). */
const requireReason = {
  meta: { type: 'problem', messages: { why: 'say why after " -- " in an eslint-disable comment' } },
  create(context) {
    return {
      Program() {
        for (const c of context.sourceCode.getAllComments()) {
          if (/^\s*eslint-disable/.test(c.value) && !/\s--\s+\S/.test(c.value))
            context.report({ loc: c.loc, messageId: 'why' });
        }
      },
    };
  },
};

export default tseslint.config(
  {
    ignores: [
      'dist/',
      'build/',
      'node_modules/',
      'test-results/',
      'grafana/dashboards/',
      'test/fixtures/',
      '.schemathesis/',
    ],
  },
  ...tseslint.configs.recommended,
  {
    linterOptions: { reportUnusedDisableDirectives: 'error' },
    plugins: { fleet: { rules: { 'disable-needs-reason': requireReason } } },
    rules: {
      'fleet/disable-needs-reason': 'error',
      '@typescript-eslint/no-unused-vars': [
        'error',
        { argsIgnorePattern: '^_', varsIgnorePattern: '^_', destructuredArrayIgnorePattern: '^_' },
      ],
    },
  },
  {
    files: ['src/**/*.ts'],
    rules: {
      '@typescript-eslint/no-non-null-assertion': 'error',
      '@typescript-eslint/consistent-type-assertions': ['error', { assertionStyle: 'never' }],
    },
  },
);
