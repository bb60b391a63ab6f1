// @ts-check
/**
 * The lint gate (`npm run lint`, run by CI): typescript-eslint's recommended type-aware rules,
 * type-only imports marked as such, no unused code. Formatting is Prettier's (`.prettierrc.json`;
 * eslint-config-prettier turns off the rules that would fight it). Import cycles, type-only ones
 * included, are madge's (`npm run lint` runs it): ESLint's cycle rules skip type imports.
 */
import js from '@eslint/js';
import prettier from 'eslint-config-prettier';
import tseslint from 'typescript-eslint';

export default tseslint.config(
  { ignores: ['dist/', 'node_modules/', 'scratch/', 'coverage/'] },
  js.configs.recommended,
  ...tseslint.configs.recommendedTypeChecked,
  {
    languageOptions: {
      // One program for the files tsconfig.json includes (every file linted with types): 34 s
      // for `eslint .` on the 2-core machine, against 42 s with projectService's per-file projects.
      parserOptions: { project: './tsconfig.json', tsconfigRootDir: import.meta.dirname },
    },
    rules: {
      '@typescript-eslint/consistent-type-imports': ['error', { fixStyle: 'inline-type-imports' }],
      '@typescript-eslint/no-unused-vars': [
        'error',
        { argsIgnorePattern: '^_', varsIgnorePattern: '^_', destructuredArrayIgnorePattern: '^_' },
      ],
      'no-duplicate-imports': ['error', { allowSeparateTypeImports: true }],
      // An async function without await is how a synchronous body meets a Promise-returning interface.
      '@typescript-eslint/require-await': 'off',
    },
  },
  {
    // Tests, benchmarks and scripts read query rows, which pg types as `any`, and assert on them:
    // checking each field's type first would say nothing the assertion does not.
    files: ['test/**', 'bench/**', 'scripts/**'],
    rules: {
      '@typescript-eslint/no-unsafe-member-access': 'off',
      '@typescript-eslint/no-unsafe-assignment': 'off',
      '@typescript-eslint/no-unsafe-argument': 'off',
      '@typescript-eslint/no-unsafe-return': 'off',
      '@typescript-eslint/no-unsafe-call': 'off',
    },
  },
  {
    files: ['**/*.js', '**/*.mjs'],
    extends: [tseslint.configs.disableTypeChecked],
  },
  prettier,
);
