import 'reflect-metadata';
import { NestFactory } from '@nestjs/core';
import { NestExpressApplication } from '@nestjs/platform-express';
import { AppModule } from './app.module';
import { ExampleOptions, optionsFromEnv } from './options';

/** Start the app with `options`; resolves once it listens. */
export async function bootstrap(options: ExampleOptions): Promise<NestExpressApplication> {
  const app = await NestFactory.create<NestExpressApplication>(AppModule.forRoot(options), {
    bodyParser: false,
    logger: ['error', 'warn'],
  });
  // The body as text, whatever its content type (curl -d sends a form type):
  // AmountPipe parses it, so bad JSON is a coded 400 like any other bad input.
  app.useBodyParser('text', { type: () => true, limit: options.bodyLimitBytes });
  app.enableShutdownHooks();
  await app.listen(options.port, options.host);
  return app;
}

if (require.main === module) {
  const options = optionsFromEnv(process.env);
  bootstrap(options).then(
    async (app) => console.log(`pointlock NestJS example (POINT_LOCK=${options.lock}) listening on ${await app.getUrl()}`),
    (error) => {
      console.error(error);
      process.exit(1);
    },
  );
}
